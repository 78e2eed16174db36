//! One connection leg, plaintext or TLS, as the relay sees it.
//!
//! [`Conn`] wraps a TCP stream or a TLS stream over one (server side for
//! the client leg, client side for the backend leg) and splits into a read
//! and a write half. The plaintext halves are tokio's borrowed TCP halves
//! (no lock); the TLS halves share the stream through `tokio::io::split`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp;
use tokio::net::TcpStream;
use tokio_rustls::{client, server};

/// A connection leg.
#[derive(Debug)]
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS terminated by jitgate (client leg).
    TlsServer(Box<server::TlsStream<TcpStream>>),
    /// TLS originated by jitgate (backend leg).
    TlsClient(Box<client::TlsStream<TcpStream>>),
}

impl From<TcpStream> for Conn {
    fn from(s: TcpStream) -> Self {
        Conn::Plain(s)
    }
}

impl Conn {
    /// Whether this leg is encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Conn::Plain(_))
    }

    /// Split into halves that can be used at the same time.
    pub fn split(&mut self) -> (ConnRead<'_>, ConnWrite<'_>) {
        match self {
            Conn::Plain(s) => {
                let (r, w) = s.split();
                (ConnRead::Plain(r), ConnWrite::Plain(w))
            }
            Conn::TlsServer(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (ConnRead::TlsServer(r), ConnWrite::TlsServer(w))
            }
            Conn::TlsClient(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (ConnRead::TlsClient(r), ConnWrite::TlsClient(w))
            }
        }
    }
}

/// The read half of a [`Conn`].
pub enum ConnRead<'a> {
    /// Plain TCP.
    Plain(tcp::ReadHalf<'a>),
    /// TLS, client leg.
    TlsServer(ReadHalf<&'a mut server::TlsStream<TcpStream>>),
    /// TLS, backend leg.
    TlsClient(ReadHalf<&'a mut client::TlsStream<TcpStream>>),
}

/// The write half of a [`Conn`].
pub enum ConnWrite<'a> {
    /// Plain TCP.
    Plain(tcp::WriteHalf<'a>),
    /// TLS, client leg.
    TlsServer(WriteHalf<&'a mut server::TlsStream<TcpStream>>),
    /// TLS, backend leg.
    TlsClient(WriteHalf<&'a mut client::TlsStream<TcpStream>>),
}

impl ConnRead<'_> {
    /// Whether this half reads straight from the socket (no TLS buffer in
    /// between), so a read that would block proves nothing is pending.
    pub fn is_plain(&self) -> bool {
        matches!(self, ConnRead::Plain(_))
    }
}

impl ConnWrite<'_> {
    /// Whether writes may sit in a TLS buffer until flushed.
    pub fn is_tls(&self) -> bool {
        !matches!(self, ConnWrite::Plain(_))
    }
}

macro_rules! delegate_read {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    Self::TlsServer(s) => Pin::new(s).poll_read(cx, buf),
                    Self::TlsClient(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    Self::TlsServer(s) => Pin::new(s).poll_write(cx, buf),
                    Self::TlsClient(s) => Pin::new(s).poll_write(cx, buf),
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_flush(cx),
                    Self::TlsServer(s) => Pin::new(s).poll_flush(cx),
                    Self::TlsClient(s) => Pin::new(s).poll_flush(cx),
                }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    Self::TlsServer(s) => Pin::new(s).poll_shutdown(cx),
                    Self::TlsClient(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_read!(Conn);
delegate_write!(Conn);
delegate_read!(ConnRead<'_>);
delegate_write!(ConnWrite<'_>);
