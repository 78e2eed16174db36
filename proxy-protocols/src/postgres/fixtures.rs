//! Byte fixtures captured from real PostgreSQL 15 clients and servers.
//!
//! Responsibility: hold verbatim wire captures shared by the codec tests, so
//! the decoders are checked against what real peers send, not only against
//! our own encoders. Invariant: these bytes are never edited by hand; each
//! constant says how it was captured so it can be re-captured.
//!
//! Clients: `psql (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)` (libpq 15)
//! talking to a small Python listener on 127.0.0.1 that dumped the first
//! bytes received. Server: PostgreSQL 15.20, reached through a Python relay
//! that logged both directions.

/// `PGSSLMODE=disable PGGSSENCMODE=disable psql -h 127.0.0.1 -p PORT -U alice test`:
/// StartupMessage 3.0 with user, database and application_name.
/// The same bytes follow the SSLRequest when psql runs with the default
/// sslmode and the listener answers `N`.
pub(crate) const PSQL_STARTUP: &[u8] = b"\
    \x00\x00\x008\x00\x03\x00\x00user\x00alice\x00database\x00test\x00applicatio\
    n_name\x00psql\x00\x00\
";

/// `psql -h 127.0.0.1 -p PORT -U alice test` with the default `sslmode=prefer`:
/// the 8-byte SSLRequest sent before the StartupMessage.
pub(crate) const PSQL_SSL_REQUEST: &[u8] = b"\x00\x00\x00\x08\x04\xd2\x16/";

/// `PGGSSENCMODE=require PGSSLMODE=disable psql ...` with `KRB5CCNAME` pointing at
/// a credential cache holding a (fake) TGT, so libpq attempts GSSAPI encryption:
/// the 8-byte GSSENCRequest.
pub(crate) const PSQL_GSSENC_REQUEST: &[u8] = b"\x00\x00\x00\x08\x04\xd2\x160";

/// CancelRequest psql sent on a second connection after SIGINT during
/// `select pg_sleep(10)`; a fake Python server had sent BackendKeyData with
/// process id 4242 and secret key 0x1234abcd.
pub(crate) const PSQL_CANCEL_REQUEST: &[u8] =
    b"\x00\x00\x00\x10\x04\xd2\x16.\x00\x00\x10\x92\x124\xab\xcd";

/// Everything PostgreSQL 15.20 sent to
/// `psql -X -U postgres -c "select 1 as a, 'x' as b" -c "do $$ begin raise notice 'hi'; end $$" -c 'select 1/0'`
/// (trust/peer auth): AuthenticationOk, 13 ParameterStatus, BackendKeyData,
/// ReadyForQuery, then RowDescription, DataRow, CommandComplete, ReadyForQuery,
/// NoticeResponse, CommandComplete, ReadyForQuery, ErrorResponse, ReadyForQuery.
pub(crate) const PG15_BACKEND_STREAM: &[u8] = b"\
    R\x00\x00\x00\x08\x00\x00\x00\x00S\x00\x00\x00\x1aapplication_name\x00psql\x00\
    S\x00\x00\x00\x19client_encoding\x00UTF8\x00S\x00\x00\x00\x17DateStyle\x00IS\
    O, MDY\x00S\x00\x00\x00&default_transaction_read_only\x00off\x00S\x00\x00\x00\
    \x17in_hot_standby\x00off\x00S\x00\x00\x00\x19integer_datetimes\x00on\x00S\x00\
    \x00\x00\x1bIntervalStyle\x00postgres\x00S\x00\x00\x00\x14is_superuser\x00on\
    \x00S\x00\x00\x00\x19server_encoding\x00UTF8\x00S\x00\x00\x002server_version\
    \x0015.20 (Debian 15.20-0+deb12u1)\x00S\x00\x00\x00#session_authorization\x00\
    postgres\x00S\x00\x00\x00#standard_conforming_strings\x00on\x00S\x00\x00\x00\
    \x15TimeZone\x00Etc/UTC\x00K\x00\x00\x00\x0c\x00\x00\"\xe0\xdc\xc84?Z\x00\x00\
    \x00\x05IT\x00\x00\x00.\x00\x02a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\
    \x00\x04\xff\xff\xff\xff\x00\x00b\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\
    \xff\xff\xff\xff\xff\xff\x00\x00D\x00\x00\x00\x10\x00\x02\x00\x00\x00\x011\x00\
    \x00\x00\x01xC\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05IN\x00\x00\x00wSN\
    OTICE\x00VNOTICE\x00C00000\x00Mhi\x00WPL/pgSQL function inline_code_block li\
    ne 1 at RAISE\x00Fpl_exec.c\x00L3907\x00Rexec_stmt_raise\x00\x00C\x00\x00\x00\
    \x07DO\x00Z\x00\x00\x00\x05IE\x00\x00\x00ASERROR\x00VERROR\x00C22012\x00Mdiv\
    ision by zero\x00Fint.c\x00L869\x00Rint4div\x00\x00Z\x00\x00\x00\x05I\
";

/// ErrorResponse PostgreSQL 15.20 sent for a StartupMessage without `user`.
pub(crate) const PG15_NO_USER_ERROR: &[u8] = b"\
    E\x00\x00\x00ySFATAL\x00VFATAL\x00C28000\x00Mno PostgreSQL user name specifi\
    ed in startup packet\x00Fpostmaster.c\x00L2349\x00RProcessStartupPacket\x00\x00\
";

/// NegotiateProtocolVersion PostgreSQL 15.20 sent for a StartupMessage with
/// version 3.5 and options `_pq_.foo`, `_pq_.bar`. Note the version field is
/// the full version `3.0` (0x0003_0000), not a bare minor number.
pub(crate) const PG15_NEGOTIATE_PROTOCOL_VERSION: &[u8] =
    b"v\x00\x00\x00\x1e\x00\x03\x00\x00\x00\x00\x00\x02_pq_.foo\x00_pq_.bar\x00";
