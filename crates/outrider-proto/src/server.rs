//! The manager's side of `AgentSync`, written by hand rather than generated, for two costs
//! that grow with the fleet: it sends messages the manager encoded once (one desired state
//! serves every stream that gets it: a copy per stream, not an encoding), and each stream
//! holds small buffers (tonic's default is 8 KiB each way, more than an agent's whole record).
//! On the wire it is the generated service: agents keep the generated client.

use std::{future::Future, pin::Pin, sync::Arc};

use bytes::{BufMut, Bytes};
use prost::Message;
use tonic::{
    Request, Response, Status, Streaming,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::{Body, Context, Poll, Service, StdError, http},
    server::{Grpc, NamedService, StreamingService},
};
use tonic_prost::ProstDecoder;

use crate::v1::{AgentMessage, ManagerMessage};

/// The gRPC path of `Sync`.
const SYNC_PATH: &str = "/outrider.sync.v1.AgentSync/Sync";

/// Bytes each stream holds to encode and decode messages; a larger message grows the buffer
/// in steps of this size while it passes.
const STREAM_BUFFER: usize = 512;

/// Encoded bytes a stream gathers before handing them to HTTP/2.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(STREAM_BUFFER, YIELD_THRESHOLD)
}

/// A [`ManagerMessage`] encoded once (protobuf bytes, without the gRPC frame header); clones
/// share the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded(Bytes);

impl Encoded {
    /// Encodes `message`.
    pub fn of(message: &ManagerMessage) -> Self {
        Self(message.encode_to_vec().into())
    }

    /// The protobuf bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

/// Writes [`Encoded`] messages as they are.
#[derive(Debug, Default)]
pub struct EncodedEncoder;

impl Encoder for EncodedEncoder {
    type Item = Encoded;
    type Error = Status;

    fn encode(&mut self, item: Encoded, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item.0);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// The codec of the manager's side: [`Encoded`] out, [`AgentMessage`] in, small buffers.
#[derive(Debug, Default, Clone, Copy)]
pub struct ManagerCodec;

impl Codec for ManagerCodec {
    type Encode = Encoded;
    type Decode = AgentMessage;
    type Encoder = EncodedEncoder;
    type Decoder = SmallDecoder;

    fn encoder(&mut self) -> EncodedEncoder {
        EncodedEncoder
    }

    fn decoder(&mut self) -> SmallDecoder {
        SmallDecoder(ProstDecoder::new(buffer_settings()))
    }
}

/// Prost's decoder of [`AgentMessage`], with this module's buffer settings.
#[derive(Debug)]
pub struct SmallDecoder(ProstDecoder<AgentMessage>);

impl Decoder for SmallDecoder {
    type Item = AgentMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<AgentMessage>, Status> {
        self.0.decode(src)
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// What answers `Sync` streams: the agent's messages in, a stream of encoded
/// [`ManagerMessage`]s out.
pub trait SyncHandler: Send + Sync + 'static {
    /// The messages sent to the agent.
    type Stream: tonic::codegen::tokio_stream::Stream<Item = Result<Encoded, Status>> + Send + 'static;

    /// Opens a stream (an error refuses it with that status).
    fn sync(
        self: Arc<Self>,
        request: Request<Streaming<AgentMessage>>,
    ) -> impl Future<Output = Result<Response<Self::Stream>, Status>> + Send + 'static;
}

/// The `AgentSync` gRPC service over a [`SyncHandler`].
#[derive(Debug)]
pub struct SyncServer<H> {
    handler: Arc<H>,
}

impl<H> SyncServer<H> {
    /// A service answering with `handler`.
    pub fn new(handler: H) -> Self {
        Self { handler: Arc::new(handler) }
    }
}

impl<H> Clone for SyncServer<H> {
    fn clone(&self) -> Self {
        Self { handler: self.handler.clone() }
    }
}

impl<H> NamedService for SyncServer<H> {
    const NAME: &'static str = "outrider.sync.v1.AgentSync";
}

/// One call of `Sync`, for [`Grpc::streaming`].
struct SyncCall<H>(Arc<H>);

impl<H: SyncHandler> StreamingService<AgentMessage> for SyncCall<H> {
    type Response = Encoded;
    type ResponseStream = H::Stream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<H::Stream>, Status>> + Send>>;

    fn call(&mut self, request: Request<Streaming<AgentMessage>>) -> Self::Future {
        Box::pin(self.0.clone().sync(request))
    }
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, std::convert::Infallible>> + Send>>;

impl<H, B> Service<http::Request<B>> for SyncServer<H>
where
    H: SyncHandler,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != SYNC_PATH {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let call = SyncCall(self.handler.clone());
        Box::pin(async move { Ok(Grpc::new(ManagerCodec).streaming(call, req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Desired, manager_message};

    #[test]
    fn an_encoded_message_is_the_message_s_protobuf_encoding() {
        let m =
            ManagerMessage { body: Some(manager_message::Body::Desired(Desired { revision: 7, sidecars: vec![] })) };
        let e = Encoded::of(&m);
        assert_eq!(ManagerMessage::decode(e.bytes().clone()).unwrap(), m);
        assert_eq!(e.clone().bytes().as_ptr(), e.bytes().as_ptr(), "clones share the bytes");
    }
}
