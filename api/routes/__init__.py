"""One blueprint per resource. A blueprint imports the shared request helpers, models and
errors of api/, never another blueprint."""
