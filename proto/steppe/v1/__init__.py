"""steppe.v1: the generated wire contract (see steppe.proto). Never edited by hand."""
