"""The online request path: admission (priority, deadline, shedding, in-flight count), the
scoring gate, and the recommendation pipeline whose named stages every recommendation endpoint
runs (``recsys.serving.pipeline``)."""
