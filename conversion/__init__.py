"""Converters from other mclSTExp implementations to mclstexp-hub checkpoints."""
