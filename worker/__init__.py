"""The svdq worker: loads the pipeline once per process and turns jobs into clips."""
