"""The online request path: admission (priority, deadline, shedding, in-flight count), the
scoring gate, the recommendation pipeline whose named stages every recommendation endpoint runs
(``recsys.serving.pipeline``), and the per-process state it reads: the settings store, the
catalogue, user histories, the result cache (with its near cache) and online experiments."""
