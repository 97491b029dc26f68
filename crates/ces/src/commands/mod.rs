//! One module per command; each reads like a short story.

pub mod audit;
pub mod docs;
pub mod images;
pub mod inspect;
pub mod lint;
pub mod load;
pub mod outputs;
pub mod proxy;
pub mod ps;
pub mod pull;
pub mod rmi;
pub mod run;
pub mod stop;
pub mod system;
pub mod test;
