"""The engine: groups, masking, thinning, criteria, sensitivity, schedules, cost model, search, quantizers.
It imports the foundations (model_define, patches, data, io) and never the applications or CLIs: those pass it
evaluation functions."""
