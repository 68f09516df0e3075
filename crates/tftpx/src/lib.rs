//! tftpx: TFTP server and client.
