// Express's own "Hello world" (expressjs.com/en/starter/hello-world.html), answering in JSON
// with the commit it was built from (the standard build puts it in APP_VERSION); exported for
// its test (test/app.test.js), listening when run.
const express = require('express')
const app = express()
const port = process.env.PORT || 3000

app.get('/', (req, res) => {
  res.json({ app: 'express-sample', version: process.env.APP_VERSION || 'unknown' })
})

if (require.main === module) {
  app.listen(port, () => {
    console.log(`Example app listening on port ${port}`)
  })
}

module.exports = app
