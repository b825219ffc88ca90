"""The HTTP API: what SDKs call (config, stream, decide, OFREP, ingest), the plan actions, API
keys and their authentication, the one JSON body parser and the one error format."""
