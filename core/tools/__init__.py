"""What a user does with a model or a run besides training: export (``export``), try it side by
side (``chat``), check its tokens (``health``), check the computer (``doctor``), preview model and
data (``preview``), and the built-in demo (``demo``)."""
