"""The middle layer: what the commands drive. Cost counting, measurement, budget matching, training, data,
studies and reports; engines import foundations (and each other without cycles), never commands."""
