"""Training data: reading rows and their formats (``reading``), then masked, batched examples
(``examples``)."""
