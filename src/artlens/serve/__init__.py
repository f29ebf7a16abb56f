"""artlens.serve: the REST API and the web page (`artlens serve`; `artlens.serve.app.create_app`)."""
