//! Walking an error's source chain: the one place it is done. A leaf module, so the
//! body, error and endpoint modules can all use it.

/// The first error of type `T` in `e`'s chain, `e` itself included.
pub fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}
