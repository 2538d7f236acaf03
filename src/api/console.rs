//! The browser test console: plain HTML/CSS/JS from `console/`, embedded in
//! the binary and served at `/console` and `/console/{file}`. The files need
//! no credential; the page's own API calls carry the one the user signs in
//! with. Not part of the OpenAPI document (it is not API).

use actix_web::http::header;
use actix_web::{HttpResponse, web};

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// Every file the console has; `index.html` is also `/console` itself.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../console/index.html"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../console/console.css"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/console.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../console/favicon.svg"),
    },
];

fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

fn serve(asset: &Asset) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(asset.content_type)
        // The files change with the binary: revalidate rather than cache.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(asset.body)
}

async fn index() -> HttpResponse {
    match asset("index.html") {
        Some(page) => serve(page),
        None => HttpResponse::NotFound().finish(),
    }
}

async fn file(name: web::Path<String>) -> HttpResponse {
    match asset(&name) {
        Some(found) => serve(found),
        None => HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body(format!("the console has no file {name:?}\n")),
    }
}

/// Registers `/console`, `/console/` and `/console/{file}` (GET).
pub fn configure(cfg: &mut web::ServiceConfig) -> &mut web::ServiceConfig {
    cfg.route("/console", web::get().to(index))
        .route("/console/", web::get().to(index))
        .route("/console/{file}", web::get().to(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_links_is_embedded() {
        let page =
            std::str::from_utf8(asset("index.html").expect("index.html").body).expect("UTF-8");
        for linked in page.split("\"/console/").skip(1) {
            let name = linked.split('"').next().unwrap_or_default();
            assert!(
                asset(name).is_some(),
                "index.html links {name}, not embedded"
            );
        }
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{} is empty", a.name);
        }
    }

    #[test]
    fn unknown_and_traversal_names_are_not_found() {
        assert!(asset("../Cargo.toml").is_none());
        assert!(asset("").is_none());
        assert!(asset("console.js").is_some());
    }
}
