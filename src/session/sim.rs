//! The handshake over the simulator's link ([`SimNet`]): the same [`Initiator`] and
//! [`Acceptor`] as on TCP, with the link's delay, loss, reordering, corruption and drops.

use super::{
    framing::take_handshake_frame, wire_regions, Acceptor, AcceptorConfig, Initiator, Offer,
    SessionError, SessionParams,
};
use crate::dest::DestError;
use crate::ports::HostRegion;
use crate::sim::SimRunError;
use crate::source::{SourceConfig, SourceError};
use crate::transport::sim::{Side, SimEvent, SimNet};
use crate::wire::{Limits, StreamKind, WireError};

/// Both ends' view of a session the simulator opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimSession {
    /// What the source's engine is built with.
    pub source: SessionParams,
    /// What the destination's engine is built with.
    pub dest: SessionParams,
}

/// Why a simulated handshake failed, with where it happened.
#[derive(Debug, thiserror::Error)]
pub enum SimHandshakeError {
    /// A handshake frame did not decode (e.g. the link corrupted it).
    #[error("{side:?} received a bad handshake frame on {stream:?}: {source}")]
    Wire {
        /// Receiving side.
        side: Side,
        /// Stream.
        stream: StreamKind,
        /// The decoder's error.
        source: WireError,
    },
    /// The link dropped during the handshake.
    #[error("the link dropped at {at_us} us, during the handshake")]
    Disconnected {
        /// Virtual time of the drop.
        at_us: u64,
    },
    /// A side refused or was refused.
    #[error("{side:?}: {source}")]
    Session {
        /// The side that failed.
        side: Side,
        /// Its error.
        source: SessionError,
    },
}

impl From<SimHandshakeError> for SimRunError {
    fn from(error: SimHandshakeError) -> SimRunError {
        match error {
            SimHandshakeError::Wire { side, stream, source } => {
                SimRunError::Wire { side, stream, source }
            }
            SimHandshakeError::Disconnected { at_us } => SimRunError::Disconnected { at_us },
            SimHandshakeError::Session { side: Side::Source, source } => {
                SimRunError::Source(SourceError::Session(source))
            }
            SimHandshakeError::Session { side: Side::Dest, source } => {
                SimRunError::Dest(DestError::Session(source))
            }
        }
    }
}

/// Opens the session of a simulated migration: the source offers `cfg`'s session id and mode
/// for memory laid out as `source_regions`, the destination accepts for `dest_regions`.
pub fn open(
    net: &mut SimNet,
    cfg: &SourceConfig,
    source_regions: &[HostRegion],
    dest_regions: &[HostRegion],
) -> Result<SimSession, SimHandshakeError> {
    let offer = Offer::new(cfg.session_id, cfg.mode, wire_regions(source_regions));
    let accept = AcceptorConfig::new(wire_regions(dest_regions));
    handshake(net, Initiator::new(offer), Acceptor::new(accept))
}

fn at(side: Side, stream: StreamKind) -> impl FnOnce(SessionError) -> SimHandshakeError {
    move |error| match error {
        SessionError::Wire(source) => SimHandshakeError::Wire { side, stream, source },
        source => SimHandshakeError::Session { side, source },
    }
}

/// Sends both Hellos, delivers them, answers them and delivers the answers, in the link's
/// virtual time. Returns once both streams are open on both sides.
pub fn handshake(
    net: &mut SimNet,
    mut initiator: Initiator,
    mut acceptor: Acceptor,
) -> Result<SimSession, SimHandshakeError> {
    let limits = Limits::default();
    for stream in StreamKind::ALL {
        let hello = initiator.hello(stream).map_err(at(Side::Source, stream))?;
        send(net, Side::Source, stream, &hello)?;
    }
    // Received bytes per side and stream, as the link delivers them.
    let mut inbox: [[Vec<u8>; 2]; 2] = Default::default();
    let mut source_params = None;
    while source_params.is_none() {
        let Some((at_us, event)) = net.next_event() else {
            return Err(idle_error(&inbox));
        };
        let (to, stream, bytes) = match event {
            SimEvent::Deliver { to, stream, bytes } => (to, stream, bytes),
            SimEvent::Disconnected { .. } => return Err(SimHandshakeError::Disconnected { at_us }),
        };
        let buf = &mut inbox[usize::from(to == Side::Dest)][stream.index()];
        buf.extend_from_slice(&bytes);
        while let Some(frame) = take_handshake_frame(buf, &limits).map_err(at(to, stream))? {
            match to {
                Side::Dest => {
                    let answer = acceptor.on_hello_bytes(Some(stream), &frame);
                    if !answer.reply.is_empty() {
                        send(net, Side::Dest, stream, &answer.reply)?;
                    }
                    answer.outcome.map_err(at(Side::Dest, stream))?;
                }
                Side::Source => {
                    source_params =
                        initiator.on_bytes(stream, &frame).map_err(at(Side::Source, stream))?;
                }
            }
        }
    }
    let dest = acceptor.params().map_err(at(Side::Dest, StreamKind::Bulk))?;
    let source = source_params.ok_or(SimHandshakeError::Session {
        side: Side::Source,
        source: SessionError::Incomplete { open: 0 },
    })?;
    Ok(SimSession { source, dest })
}

fn send(
    net: &mut SimNet,
    from: Side,
    stream: StreamKind,
    bytes: &[u8],
) -> Result<(), SimHandshakeError> {
    net.send(from, stream, bytes)
        .map_err(|_| SimHandshakeError::Disconnected { at_us: net.now_us() })
}

/// The link went quiet with the handshake unfinished: a frame is cut short (its length field
/// was corrupted, or a segment is missing).
fn idle_error(inbox: &[[Vec<u8>; 2]; 2]) -> SimHandshakeError {
    for (side_index, side) in [Side::Source, Side::Dest].into_iter().enumerate() {
        for stream in StreamKind::ALL {
            let have = inbox[side_index][stream.index()].len() as u64;
            if have > 0 {
                let source = WireError::Truncated { what: "handshake frame", need: have + 1, have };
                return SimHandshakeError::Wire { side, stream, source };
            }
        }
    }
    let source = SessionError::Incomplete { open: 0 };
    SimHandshakeError::Session { side: Side::Source, source }
}
