//! What loading a policy reports: each finding with its place, and the error that holds
//! them all.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding, printed as `FILE:LINE:COLUMN: error: MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based line and column (in characters); `None` for problems with a whole file or
    /// directory.
    pub position: Option<(usize, usize)>,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {sev}: {}", self.file, self.message),
            None => write!(f, "{}: {sev}: {}", self.file, self.message),
        }
    }
}

/// A policy that could not be loaded: every diagnostic (errors and warnings) in file order.
#[derive(Clone, Debug, thiserror::Error)]
pub struct LoadError {
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadError {
    pub fn error_count(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }
}

/// Every diagnostic on its own line, then `N errors`.
impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            writeln!(f, "{d}")?;
        }
        let n = self.error_count();
        write!(f, "{n} {}", if n == 1 { "error" } else { "errors" })
    }
}
