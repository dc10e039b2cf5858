//! The guard's hand in a request: the concurrency slot and the body's share
//! of the body budget, taken by the ingress once the body is in and kept by
//! the guard with the response (see [`super::guard`]).

use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::budget::{BodyBudget, Reservation};
use crate::error::ProxyError;
use crate::metrics;

/// What a request holds until its response is done.
#[derive(Default)]
pub(super) struct Held {
    permit: Option<OwnedSemaphorePermit>,
    body: Option<Reservation>,
}

/// The guard's hand in a request (given to the Bedrock handler directly, to
/// the router's handlers in the request's extensions): the ingress reads the
/// body against [`Gate::budget`] and then takes its concurrency slot with
/// [`Gate::admit`]; the guard keeps both with the response.
#[derive(Clone)]
pub struct Gate {
    concurrency: Arc<Semaphore>,
    budget: BodyBudget,
    held: Arc<Mutex<Held>>,
}

impl Gate {
    /// The budget of body bytes in flight.
    pub fn budget(&self) -> &BodyBudget {
        &self.budget
    }

    /// Takes a concurrency slot for the request whose body (holding `body` of
    /// the budget) is in; a 503 when every slot is taken.
    pub fn admit(&self, body: Option<Reservation>) -> Result<(), ProxyError> {
        let Ok(permit) = self.concurrency.clone().try_acquire_owned() else {
            metrics::rejected("overloaded");
            return Err(ProxyError::overloaded(
                "The proxy is at its concurrent request limit; retry shortly.",
            ));
        };
        let mut held = crate::support::lock(&self.held);
        held.permit = Some(permit);
        held.body = body;
        Ok(())
    }

    /// A gate onto `concurrency` slots and the `budget` of body bytes, with
    /// nothing held yet.
    pub(super) fn new(concurrency: Arc<Semaphore>, budget: BodyBudget) -> Gate {
        Gate {
            concurrency,
            budget,
            held: Arc::default(),
        }
    }

    /// What the request took (its slot, its body's budget), for the response
    /// to hold until it is done.
    pub(super) fn take_held(&self) -> Held {
        std::mem::take(&mut *crate::support::lock(&self.held))
    }
}
