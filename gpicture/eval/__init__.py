"""Evaluation: predictions in official benchmark formats, scored with the official tools."""
