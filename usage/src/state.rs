//! What the statistics endpoints share: the counters, the policy in force, and who may
//! read them. Both the native API and SUSHI take it as their axum state.

use std::sync::Arc;

use policy::Policy;

use super::{Statisticians, Usage};

pub(crate) struct ApiState {
    pub usage: Arc<Usage>,
    pub policy: Box<dyn Fn() -> Arc<Policy> + Send + Sync>,
    pub statisticians: Arc<Statisticians>,
    pub k_anonymity: u32,
}
