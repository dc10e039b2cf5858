//! Which API a request came in on: Bedrock Runtime, the OpenAI-compatible chat
//! server or SageMaker Runtime. The request log, the counters and fault rules
//! name it; each face's operations are listed here, in one place.

use bedrock_wire::operation::RuntimeOperation;
use bedrock_wire::sagemaker::SageMakerOperation;
use serde::{Deserialize, Serialize};

/// One of the simulator's APIs (Bedrock Runtime unless said otherwise).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Face {
    #[default]
    #[serde(rename = "bedrock")]
    Bedrock,
    #[serde(rename = "openai")]
    OpenAi,
    #[serde(rename = "sagemaker")]
    SageMaker,
}

/// The OpenAI-compatible face's one inference operation.
pub const CHAT_COMPLETIONS: &str = "chat-completions";

impl Face {
    pub const ALL: [Face; 3] = [Face::Bedrock, Face::OpenAi, Face::SageMaker];

    pub fn name(self) -> &'static str {
        match self {
            Face::Bedrock => "bedrock",
            Face::OpenAi => "openai",
            Face::SageMaker => "sagemaker",
        }
    }

    /// Whether `operation` names one of this face's operations, as fault rules
    /// and the request log spell them.
    pub fn has_operation(self, operation: &str) -> bool {
        match self {
            Face::Bedrock => RuntimeOperation::from_label(operation).is_some(),
            Face::OpenAi => operation == CHAT_COMPLETIONS,
            Face::SageMaker => [
                SageMakerOperation::InvokeEndpoint,
                SageMakerOperation::InvokeEndpointWithResponseStream,
            ]
            .iter()
            .any(|op| op.name() == operation),
        }
    }
}

/// The faces a fault rule applies to; a rule without one applies to Bedrock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaceMatch {
    Bedrock,
    #[serde(rename = "openai")]
    OpenAi,
    #[serde(rename = "sagemaker")]
    SageMaker,
    Any,
}

impl FaceMatch {
    /// The faces this matches.
    pub fn faces(self) -> &'static [Face] {
        match self {
            FaceMatch::Bedrock => &[Face::Bedrock],
            FaceMatch::OpenAi => &[Face::OpenAi],
            FaceMatch::SageMaker => &[Face::SageMaker],
            FaceMatch::Any => &Face::ALL,
        }
    }

    pub fn matches(self, face: Face) -> bool {
        self.faces().contains(&face)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_belong_to_their_face() {
        assert!(Face::Bedrock.has_operation("converse-stream"));
        assert!(Face::Bedrock.has_operation("start-async-invoke"));
        assert!(!Face::Bedrock.has_operation(CHAT_COMPLETIONS));
        assert!(Face::OpenAi.has_operation(CHAT_COMPLETIONS));
        assert!(Face::SageMaker.has_operation("invoke-endpoint-with-response-stream"));
        assert!(!Face::SageMaker.has_operation("converse"));
        assert!(FaceMatch::Any.matches(Face::SageMaker));
        assert!(!FaceMatch::OpenAi.matches(Face::Bedrock));
        let parsed: FaceMatch = serde_json::from_str("\"openai\"").unwrap();
        assert_eq!(parsed, FaceMatch::OpenAi);
    }
}
