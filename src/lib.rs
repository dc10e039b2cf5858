//! bedrock-proxy (in progress).
