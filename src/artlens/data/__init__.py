"""artlens.data"""
