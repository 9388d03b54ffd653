"""Building blocks shared by training and serving: id maps, interaction matrices, text, history."""
