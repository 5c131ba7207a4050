//! ACME: the certificate path's source of publicly trusted certificates. For now it owns
//! the HTTP-01 challenge registry the port-80 listener answers from; ordering and
//! renewal land in `acme::manager`.

pub mod challenges;
