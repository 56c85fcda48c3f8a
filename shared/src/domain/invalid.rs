//! Why an input was refused: the one error type of every check on what
//! people send.

use std::fmt;

/// Why a prompt or a parameter was refused. The text is written for the person
/// who sent it: it names the field, what was wrong and what is accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// The field at fault (`prompt`, `kind`, `params.sample_count`...).
    pub field: String,
    /// One sentence on what is wrong.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl ValidationError {
    /// The mistake without the value at fault (`invalid prompt`, `invalid
    /// params`): the field's first segment is always a name of ours, what
    /// follows may be the caller's (an unknown parameter's name).
    pub fn class(&self) -> String {
        let field = self.field.split(['.', '[']).next().unwrap_or_default();
        format!("invalid {field}")
    }

    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
