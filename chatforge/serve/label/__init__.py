"""The labeling app: database (db), sign-in and CSRF nonces (auth), what it stores (store), pages (app),
agreement, export to training files, and helpers to run and load-test it (server, load)."""
