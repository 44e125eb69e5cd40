"""Generated from proto/whatisup/v1/*.proto by clients/python/generate.sh (grpcio-tools). Do not edit."""
