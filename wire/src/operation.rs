//! Bedrock Runtime's model operations and their paths.

/// Bedrock Runtime's five model operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Converse,
    ConverseStream,
    Invoke,
    InvokeStream,
    CountTokens,
}

impl Operation {
    /// The last segment of the operation's path (`/model/{modelId}/...`).
    pub fn name(self) -> &'static str {
        match self {
            Operation::Converse => "converse",
            Operation::ConverseStream => "converse-stream",
            Operation::Invoke => "invoke",
            Operation::InvokeStream => "invoke-with-response-stream",
            Operation::CountTokens => "count-tokens",
        }
    }

    pub fn from_name(name: &str) -> Option<Operation> {
        [
            Operation::Converse,
            Operation::ConverseStream,
            Operation::Invoke,
            Operation::InvokeStream,
            Operation::CountTokens,
        ]
        .into_iter()
        .find(|op| op.name() == name)
    }

    /// Whether the answer is an event stream.
    pub fn is_stream(self) -> bool {
        matches!(self, Operation::ConverseStream | Operation::InvokeStream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for op in [
            Operation::Converse,
            Operation::ConverseStream,
            Operation::Invoke,
            Operation::InvokeStream,
            Operation::CountTokens,
        ] {
            assert_eq!(Operation::from_name(op.name()), Some(op));
        }
        assert_eq!(Operation::from_name("apply"), None);
    }
}
