"""Statistics layer: endpoints from raw labs and questionnaires, Cox and mixed models."""
