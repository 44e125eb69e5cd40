//! Domain types shared by every module.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Pending,
    Qr,
    Connecting,
    Connected,
    Reconnecting,
    Disconnected,
    Failed,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Pending,
        Status::Qr,
        Status::Connecting,
        Status::Connected,
        Status::Reconnecting,
        Status::Disconnected,
        Status::Failed,
    ];

    /// Statuses in which some node must be running the session.
    pub const ACTIVE: [Status; 4] = [
        Status::Qr,
        Status::Connecting,
        Status::Connected,
        Status::Reconnecting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Qr => "qr",
            Status::Connecting => "connecting",
            Status::Connected => "connected",
            Status::Reconnecting => "reconnecting",
            Status::Disconnected => "disconnected",
            Status::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_active(self) -> bool {
        Status::ACTIVE.contains(&self)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Network,
    Logout,
    SessionInvalidated,
    KickedOtherDevice,
    Banned,
    ClientOutdated,
    RetriesExhausted,
    QrTimeout,
    UserRequest,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Network => "network",
            Reason::Logout => "logout",
            Reason::SessionInvalidated => "session_invalidated",
            Reason::KickedOtherDevice => "kicked_other_device",
            Reason::Banned => "banned",
            Reason::ClientOutdated => "client_outdated",
            Reason::RetriesExhausted => "retries_exhausted",
            Reason::QrTimeout => "qr_timeout",
            Reason::UserRequest => "user_request",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Live,
    Test,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "live" => Some(Mode::Live),
            "test" => Some(Mode::Test),
            _ => None,
        }
    }

    /// Test mode is real: its channels run on the simulated phone.
    pub fn engine(self) -> &'static str {
        match self {
            Mode::Live => "whatsapp",
            Mode::Test => "sandbox",
        }
    }
}

/// Who is calling: resolved from an API key.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: String,
    pub customer_id: String,
    pub mode: Mode,
    /// A key bound to one channel.
    pub channel_id: Option<String>,
}
