//! Bedrock Runtime's operations: the five model operations and their path
//! segments, and the whole set of eleven with their API names and labels.

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

/// Every Bedrock Runtime operation, as `bedrock-runtime-service-2.json` names
/// them. [`Operation`] is the subset that runs a model on `/model/{modelId}/...`
/// with a JSON body; the rest (guardrails, async invoke, the bidirectional
/// stream) each have their own path and shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuntimeOperation {
    ApplyGuardrail,
    Converse,
    ConverseStream,
    CountTokens,
    GetAsyncInvoke,
    InvokeGuardrailChecks,
    InvokeModel,
    InvokeModelWithBidirectionalStream,
    InvokeModelWithResponseStream,
    ListAsyncInvokes,
    StartAsyncInvoke,
}

impl RuntimeOperation {
    /// Every operation, in the API model's (alphabetical) order.
    pub const ALL: [RuntimeOperation; 11] = [
        RuntimeOperation::ApplyGuardrail,
        RuntimeOperation::Converse,
        RuntimeOperation::ConverseStream,
        RuntimeOperation::CountTokens,
        RuntimeOperation::GetAsyncInvoke,
        RuntimeOperation::InvokeGuardrailChecks,
        RuntimeOperation::InvokeModel,
        RuntimeOperation::InvokeModelWithBidirectionalStream,
        RuntimeOperation::InvokeModelWithResponseStream,
        RuntimeOperation::ListAsyncInvokes,
        RuntimeOperation::StartAsyncInvoke,
    ];

    /// The operation's name in the API model (`ApplyGuardrail`).
    pub fn api_name(self) -> &'static str {
        match self {
            RuntimeOperation::ApplyGuardrail => "ApplyGuardrail",
            RuntimeOperation::Converse => "Converse",
            RuntimeOperation::ConverseStream => "ConverseStream",
            RuntimeOperation::CountTokens => "CountTokens",
            RuntimeOperation::GetAsyncInvoke => "GetAsyncInvoke",
            RuntimeOperation::InvokeGuardrailChecks => "InvokeGuardrailChecks",
            RuntimeOperation::InvokeModel => "InvokeModel",
            RuntimeOperation::InvokeModelWithBidirectionalStream => {
                "InvokeModelWithBidirectionalStream"
            }
            RuntimeOperation::InvokeModelWithResponseStream => "InvokeModelWithResponseStream",
            RuntimeOperation::ListAsyncInvokes => "ListAsyncInvokes",
            RuntimeOperation::StartAsyncInvoke => "StartAsyncInvoke",
        }
    }

    /// A short kebab-case label for logs, metrics and fault rules: a model
    /// operation's path segment (`converse`, `invoke-with-response-stream`),
    /// otherwise the name in kebab case (`apply-guardrail`, `start-async-invoke`).
    pub fn label(self) -> &'static str {
        match self {
            RuntimeOperation::ApplyGuardrail => "apply-guardrail",
            RuntimeOperation::GetAsyncInvoke => "get-async-invoke",
            RuntimeOperation::InvokeGuardrailChecks => "invoke-guardrail-checks",
            RuntimeOperation::InvokeModelWithBidirectionalStream => {
                "invoke-with-bidirectional-stream"
            }
            RuntimeOperation::ListAsyncInvokes => "list-async-invokes",
            RuntimeOperation::StartAsyncInvoke => "start-async-invoke",
            model => model.model_operation().map_or("", Operation::name),
        }
    }

    /// The operation of a [`label`](Self::label).
    pub fn from_label(label: &str) -> Option<RuntimeOperation> {
        Self::ALL.into_iter().find(|op| op.label() == label)
    }

    /// The HTTP method the API model gives it.
    pub fn method(self) -> &'static str {
        match self {
            RuntimeOperation::GetAsyncInvoke | RuntimeOperation::ListAsyncInvokes => "GET",
            _ => "POST",
        }
    }

    /// The model operation this is, for the five that [`Operation`] covers.
    pub fn model_operation(self) -> Option<Operation> {
        Some(match self {
            RuntimeOperation::Converse => Operation::Converse,
            RuntimeOperation::ConverseStream => Operation::ConverseStream,
            RuntimeOperation::CountTokens => Operation::CountTokens,
            RuntimeOperation::InvokeModel => Operation::Invoke,
            RuntimeOperation::InvokeModelWithResponseStream => Operation::InvokeStream,
            _ => return None,
        })
    }
}

impl From<Operation> for RuntimeOperation {
    fn from(op: Operation) -> Self {
        match op {
            Operation::Converse => RuntimeOperation::Converse,
            Operation::ConverseStream => RuntimeOperation::ConverseStream,
            Operation::Invoke => RuntimeOperation::InvokeModel,
            Operation::InvokeStream => RuntimeOperation::InvokeModelWithResponseStream,
            Operation::CountTokens => RuntimeOperation::CountTokens,
        }
    }
}

impl std::fmt::Display for RuntimeOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
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

    #[test]
    fn every_runtime_operation_matches_the_api_model() {
        let model: serde_json::Value = serde_json::from_str(include_str!(
            "../../reference/bedrock-runtime-service-2.json"
        ))
        .unwrap();
        let ops = model["operations"].as_object().unwrap();
        assert_eq!(ops.len(), RuntimeOperation::ALL.len());
        for op in RuntimeOperation::ALL {
            let http = &ops[op.api_name()]["http"];
            assert_eq!(http["method"], op.method(), "{op}");
            assert_eq!(RuntimeOperation::from_label(op.label()), Some(op));
            if let Some(model_op) = op.model_operation() {
                let uri = http["requestUri"].as_str().unwrap();
                assert_eq!(uri, format!("/model/{{modelId}}/{}", model_op.name()));
                assert_eq!(RuntimeOperation::from(model_op), op);
            }
        }
    }
}
