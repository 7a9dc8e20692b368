//! tunsec's binaries' shared code: the configuration file today; the
//! daemon (`tunsecd`), the CLI (`tunsec`) and the control API as the
//! overlay issue lands.

#![forbid(unsafe_code)]

pub mod config;
