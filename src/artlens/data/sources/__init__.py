"""artlens.data.sources"""
