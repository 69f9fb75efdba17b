//! Empty library target: it lets filter-userspace list this crate as a build-dependency, so
//! cargo rebuilds the embedded XDP object when the program changes (the aya-template layout).
#![no_std]
