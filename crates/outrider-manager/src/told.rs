//! A desired state as told to agents: one value shared by every stream that gets the same
//! snapshot, encoded for the wire once for all of them (by the first stream that sends it).

use std::sync::{Arc, OnceLock};

use outrider_model::DesiredState;
use outrider_proto::{
    server::Encoded,
    v1::{self, ManagerMessage, manager_message},
};

/// A desired state and, once a stream has sent it, its encoding.
#[derive(Debug)]
pub struct Told {
    state: Arc<DesiredState>,
    wire: OnceLock<Encoded>,
}

impl Told {
    /// `state`, not yet encoded.
    pub fn new(state: Arc<DesiredState>) -> Arc<Self> {
        Arc::new(Self { state, wire: OnceLock::new() })
    }

    /// The desired state.
    pub fn state(&self) -> &Arc<DesiredState> {
        &self.state
    }

    /// The `Desired` message of it, encoded on the first call.
    pub fn wire(&self) -> Encoded {
        self.wire
            .get_or_init(|| {
                Encoded::of(&ManagerMessage {
                    body: Some(manager_message::Body::Desired(v1::Desired::from(self.state.as_ref()))),
                })
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn every_stream_sends_the_same_bytes_encoded_once() {
        let told = Told::new(Arc::new(DesiredState { revision: 3, sidecars: Vec::new() }));
        let (a, b) = (told.wire(), told.wire());
        assert_eq!(a.bytes().as_ptr(), b.bytes().as_ptr(), "one encoding shared");
        let m = ManagerMessage::decode(a.bytes().clone()).unwrap();
        let Some(manager_message::Body::Desired(d)) = m.body else { panic!("{m:?}") };
        assert_eq!(d.revision, 3);
    }
}
