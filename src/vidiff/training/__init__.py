"""Lightning side of VIDiff: the stage module and its callbacks."""
