"""Running a plan: the training job and its events (``job``), the Trainer glue (``trainer``), the
model wrapping (``adapters``), lean memory for big vocabularies (``lean``), reloading a finished
run (``trained``) and measuring peak memory (``memtrack``)."""
