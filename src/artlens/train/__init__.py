"""artlens.train"""
