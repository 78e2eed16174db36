//! Byte fixtures captured from the real MariaDB 10.11 client and server.
//!
//! Responsibility: hold verbatim wire captures shared by the codec tests, so
//! the decoders are checked against what real peers send, not only against
//! our own encoders. Invariant: these bytes are never edited by hand; each
//! constant says how it was captured so it can be re-captured.
//!
//! Clients: `mysql  Ver 15.1 Distrib 10.11.19-MariaDB` (libmariadb 3.3.20)
//! and mysql_async 0.37 (the `MYSQL_ASYNC_*` constants).
//! Server: MariaDB 10.11.19 (Debian 12) on 127.0.0.1:3306, reached through a
//! small Python relay that logged both directions; the SSLRequest came from
//! a Python listener that replayed the greeting below with `CLIENT_SSL` set;
//! the AuthSwitchRequest from a Python client that sent a HandshakeResponse41
//! by hand. Scrambles and auth answers are whatever those runs produced.

/// The greeting MariaDB 10.11.19 sent to the mysql CLI (packet with header).
pub(crate) const MARIADB_GREETING: &[u8] = b"\
    d\x00\x00\x00\x0a5.5.5-10.11.19-MariaDB-0+deb12u1\x00'\x00\x00\x00K#m{D\
    \x22y]\x00\xfe\xf7-\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\
    \x00\x00G*</u#J.EPC@\x00mysql_native_password\x00";

/// `mysql -h 127.0.0.1 -P PORT -u root -e ...`: HandshakeResponse41, no password, no database.
pub(crate) const CLI_RESPONSE_ROOT: &[u8] = b"\
    \xbc\x00\x00\x01\x84\xa2\xbf\x00\x00\x00\x10\x00!\x00\x00\x00\x00\x00\x00\
    \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00root\
    \x00\x00mysql_native_password\x00\x7f\x03_os\x05Linux\x0c_client_name\x0al\
    ibmariadb\x04_pid\x0524399\x0f_client_version\x063.3.20\x09_platform\x06x8\
    6_64\x0cprogram_name\x05mysql\x0c_server_host\x09127.0.0.1";

/// `mysql -h 127.0.0.1 -P PORT -u jg_alice -palice-pw test -e 'SELECT 1'`: HandshakeResponse41 with a native password answer and a database.
pub(crate) const CLI_RESPONSE_ALICE_DB: &[u8] = b"\
    \xd9\x00\x00\x01\x8c\xa2\xbf\x00\x00\x00\x10\x00!\x00\x00\x00\x00\x00\x00\
    \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00jg_ali\
    ce\x00\x145X\xfdS\xf9\x8d9\x7f\xd3\x9aii_\xdb\x91cU\x15\x9bhtest\x00mysql_\
    native_password\x00\x7f\x03_os\x05Linux\x0c_client_name\x0alibmariadb\x04_\
    pid\x0525124\x0f_client_version\x063.3.20\x09_platform\x06x86_64\x0cprogra\
    m_name\x05mysql\x0c_server_host\x09127.0.0.1";

/// The OK MariaDB sent after that login (session tracking: schema `test`).
pub(crate) const MARIADB_OK_AFTER_AUTH_PACKET: &[u8] = b"\
    \x10\x00\x00\x02\x00\x00\x00\x02@\x00\x00\x00\x07\x01\x05\x04test";

/// The COM_QUERY `SELECT 1` the CLI sent next.
pub(crate) const CLI_QUERY_SELECT_1: &[u8] = b"\
    \x09\x00\x00\x00\x03SELECT 1";

/// MariaDB's answer to `SELECT 1 AS a, NULL AS b` (no CLIENT_DEPRECATE_EOF): column count, 2 definitions, EOF, 1 row, EOF.
pub(crate) const MARIADB_RESULT_SET: &[u8] = b"\
    \x02\x00\x00\x01\x02\x01\x18\x00\x00\x02\x03def\x00\x00\x00\x01a\x00\x00\
    \x0c?\x00\x01\x00\x00\x00\x03\x81\x00\x00\x00\x00\x18\x00\x00\x03\x03def\
    \x00\x00\x00\x01b\x00\x00\x0c?\x00\x00\x00\x00\x00\x06\x80\x00\x00\x00\x00\
    \x05\x00\x00\x04\xfe\x00\x00\x02\x00\x03\x00\x00\x05\x011\xfb\x05\x00\x00\
    \x06\xfe\x00\x00\x02\x00";

/// The ERR MariaDB sent for a wrong password (sequence id 2).
pub(crate) const MARIADB_ACCESS_DENIED_PACKET: &[u8] = b"\
    L\x00\x00\x02\xff\x15\x04#28000Access denied for user 'jg_alice'@'127.0.0.\
    1' (using password: YES)";

/// `mysql --ssl` against a server that offers CLIENT_SSL: the 32-byte SSLRequest (a TLS ClientHello followed at once).
pub(crate) const CLI_SSL_REQUEST: &[u8] = b"\
    \x20\x00\x00\x01\x84\xaa\xbf\x00\x00\x00\x10\x00!\x00\x00\x00\x00\x00\x00\
    \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00";

/// COM_QUIT as the CLI sends it at exit.
pub(crate) const CLI_QUIT: &[u8] = b"\
    \x01\x00\x00\x00\x01";

/// MariaDB's AuthSwitchRequest (sequence id 2) to a HandshakeResponse41 naming an unknown auth plugin (`jitgate_passthrough`), the way jitgate logs in for a client: plugin mysql_native_password and the greeting's own scramble.
pub(crate) const MARIADB_AUTH_SWITCH_PACKET: &[u8] = b"\
    ,\x00\x00\x02\xfemysql_native_password\x00p]aQP|Bs=tPu{*[l1J`&\x00";

/// mysql_async 0.37 logging in as `jg_alice` (password `alice-pw`, database `test`) to MariaDB 10.11: HandshakeResponse41 with CLIENT_DEPRECATE_EOF and no connection attributes.
pub(crate) const MYSQL_ASYNC_RESPONSE: &[u8] = b"\
    Y\x00\x00\x01\x88\xa2\x0f\x01\x00\x00@\x00-\x00\x00\x00\x00\x00\x00\x00\
    \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x14\x00\x00\x00jg_alice\
    \x00\x14PG\xd9\xcaa\xcc*y\x02\x9b\xder\xbb\x0b\x16z\xa3L\x8d\xaatest\x00my\
    sql_native_password\x00";

/// mysql_async's COM_QUERY `SELECT 1`.
pub(crate) const MYSQL_ASYNC_SELECT_1: &[u8] = b"\
    \x09\x00\x00\x00\x03SELECT 1";

/// MariaDB's answer to it with CLIENT_DEPRECATE_EOF: column count, 1 definition, 1 row, an OK packet with header 0xFE.
pub(crate) const MARIADB_RESULT_SET_DEPRECATE_EOF: &[u8] = b"\
    \x02\x00\x00\x01\x01\x01\x17\x00\x00\x02\x03def\x00\x00\x00\x011\x00\x0c?\
    \x00\x01\x00\x00\x00\x03\x81\x00\x00\x00\x00\x02\x00\x00\x03\x011\x07\x00\
    \x00\x04\xfe\x00\x00\x02\x00\x00\x00";

/// mysql_async's COM_CHANGE_USER to `jg_alice_ro` (password `alice-ro-pw`, database `test`).
pub(crate) const MYSQL_ASYNC_CHANGE_USER: &[u8] = b"\
    @\x00\x00\x00\x11jg_alice_ro\x00\x14\x9b\xb0\xfaE6FlS\x9b\x05\xfd\xf7\xd4\
    \xc5Ky\x0f\xbb\xb3\xeatest\x00-\x00mysql_native_password\x00\x00";

/// MariaDB's AuthSwitchRequest answering it (sequence id 1, the connection's scramble).
pub(crate) const MARIADB_CHANGE_USER_SWITCH: &[u8] = b"\
    ,\x00\x00\x01\xfemysql_native_password\x00>j!_<NU>sNhCUco'p~L=\x00";

/// mysql_async's answer to that switch (sequence id 2).
pub(crate) const MYSQL_ASYNC_CHANGE_USER_ANSWER: &[u8] = b"\
    \x14\x00\x00\x02\x9b\xb0\xfaE6FlS\x9b\x05\xfd\xf7\xd4\xc5Ky\x0f\xbb\xb3\
    \xea";

/// MariaDB's OK ending the change of user (sequence id 3).
pub(crate) const MARIADB_CHANGE_USER_OK: &[u8] = b"\
    \x07\x00\x00\x03\x00\x00\x00\x02\x00\x00\x00";
