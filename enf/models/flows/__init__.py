"""Flows: the continuous normalizing flow, base distributions and the density models built from them."""
