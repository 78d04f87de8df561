// The distribution's viewer-request function (CloudFront Functions, cloudfront-js-2.0),
// on both of its behaviours; deploy/render.py copies this file into template.yaml.
//
// It tells the origins who the viewer is, in the headers infra/cloudfront.py names:
//   x-ocedge-viewer-host     the Host the viewer asked for (the distribution's own
//                            name or your domain): the origin request policies
//                            (AllViewerExceptHostHeader; TerminalRequestPolicy, which
//                            lists these two) give each origin its own Host
//   x-ocedge-viewer-address  the viewer's IP address (event.viewer.ip)
// written over anything the viewer sent under those names. The edge and the terminal
// listener believe them only on a request that carries the distribution's secret
// (x-ocedge-origin-secret, an origin custom header that CloudFront adds), so a copy of
// that header from the viewer is dropped here too.
//
// The event: docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/
// functions-event-structure.html (header names are lower case; a header is
// {value, multiValue}); the pattern: "Add a true client IP header",
// .../example-function-add-true-client-ip-header.html.
async function handler(event) {
    var request = event.request;
    var headers = request.headers;
    delete headers['x-ocedge-origin-secret'];
    delete headers['x-ocedge-viewer-host'];
    delete headers['x-ocedge-viewer-address'];
    if (headers.host && headers.host.value) {
        headers['x-ocedge-viewer-host'] = {value: headers.host.value};
    }
    headers['x-ocedge-viewer-address'] = {value: event.viewer.ip};
    return request;
}
