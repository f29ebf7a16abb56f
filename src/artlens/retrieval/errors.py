"""The one error type of artlens.retrieval."""


class RetrievalError(ValueError):
    """An index directory that cannot be used, or a query that does not fit it (with the reason)."""
