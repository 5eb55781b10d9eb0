"""Base models: where they come from and how they load (``sources``), the numbers memory depends on
(``shape``, read from config.json alone), and chat templates (``templates``)."""
