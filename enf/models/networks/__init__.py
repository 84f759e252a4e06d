"""Vector fields of the continuous flows: E-NF's EGNN dynamics and the paper's baselines."""
