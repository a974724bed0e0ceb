//! burrow-core integration tests: real TLS clients and servers on 127.0.0.1.

mod acme;
mod cli;
mod cli_hardening;
mod cluster;
mod common;
mod config;
mod console;
mod faults;
mod hardening;
mod hostile;
mod http;
mod http_policy;
mod lifecycle;
mod load;
mod modes;
mod multi_edge;
mod observe_agent;
mod observe_edge;
mod option_table;
mod policy;
mod pools;
mod readme;
mod refusals;
mod session_surface;
mod status_page;
mod web;
