"""A small application package that the corpus's migration scripts import, as real projects' scripts do."""
