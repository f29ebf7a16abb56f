"""artlens.evaluate"""
