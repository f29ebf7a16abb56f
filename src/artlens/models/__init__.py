"""artlens.models"""
