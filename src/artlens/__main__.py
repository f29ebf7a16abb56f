from artlens.cli import app

app()
